/**
 * The limiter's arithmetic, pure and shared by the memory and NATS stores
 * (the Redis store runs the same rules in Lua: redis-scripts.ts).
 *
 * By hand, not rate-limiter-flexible & co.: none has a NATS KV store, and none reserves a cost to settle later (tokens given back, USD charged) across rates, leases and budgets in one record updated atomically.
 *
 * Algorithm, per scope (an agent, a microDAO, a model), all state in one record:
 * - requests/minute and tokens/minute: GCRA (the generic cell rate algorithm,
 *   i.e. a token bucket kept as one number). A limit of L per minute gives an
 *   emission interval I = 60 s / L; the record keeps the theoretical arrival
 *   time `tat`. Admitting a cost c (1 request, or the tokens reserved) moves
 *   `tat` to max(tat, now) + c·I and is allowed when that is at most
 *   now + 60 s: a burst of up to L at once, then L per minute sustained. A
 *   refusal's retry_after is exactly how long until the cost fits
 *   (tat' − now − 60 s), never more than a minute for a request that can ever fit.
 *   Settling gives unused tokens back (tat −= unused·I) and charges any excess.
 * - concurrent requests: a set of leases (request id → expiry); a slot held by
 *   a worker that died frees itself when its lease expires.
 * - USD per day / per month: integer micro-dollars in a window named by the
 *   UTC day or month; a new window starts from zero. The reservation is the
 *   request's maximum cost; settling replaces it with the real cost.
 *
 * Exactness comes from the stores, not from here: each applies these rules
 * to a record under compare-and-swap (NATS KV revision) or inside one Lua
 * script (Redis) or synchronously (memory), never read-then-write.
 *
 * Each record also holds the limits it was last counted against (`RecordedLimits`,
 * below): what ops tools measure its usage against.
 */
import { createHash } from 'node:crypto';
import type { LimitSetConfig, LimitsConfig } from '../config/limits-schema.js';

export const RATE_WINDOW_MS = 60_000;
/** Float slack when comparing sums of emission intervals (rates that do not divide a minute). */
const EPSILON_MS = 1e-6;
/** A concurrency refusal cannot know when a request will finish: this is the hint it gives. */
export const CONCURRENCY_RETRY_HINT_MS = 1_000;

export const SCOPE_KINDS = ['agent', 'microdao', 'model', 'key'] as const;
export type ScopeKind = (typeof SCOPE_KINDS)[number];

export const DIMENSIONS = ['rpm', 'tpm', 'concurrent', 'daily_usd', 'monthly_usd'] as const;
export type Dimension = (typeof DIMENSIONS)[number];

export interface ScopeLimits {
  rpm?: number;
  tpm?: number;
  concurrent?: number;
  /** Micro-dollars. */
  dailyMicroUsd?: number;
  /** Micro-dollars. */
  monthlyMicroUsd?: number;
}

export interface Scope {
  kind: ScopeKind;
  id: string;
  /** Store key: `<kind>.<encoded id>`, valid as a NATS KV key and a Redis key. */
  key: string;
}

export interface ScopePlan {
  scope: Scope;
  limits: ScopeLimits;
  /** The limits as written into the scope's record at each admission (none: nothing is written). */
  stamp?: LimitStamp | undefined;
}

/** The stored record of one scope (JSON in NATS KV and memory; a hash plus a sorted set in Redis). */
export interface ScopeState {
  rpm_tat?: number;
  tpm_tat?: number;
  /** Request id → lease expiry (ms since the epoch). */
  leases?: Record<string, number>;
  day?: string;
  day_used?: number;
  month?: string;
  month_used?: number;
  /** The limits the last admission was counted against (absent in records written before issue 20). */
  limits?: RecordedLimits;
}

/** What one admission asks of every scope it touches. */
export interface Charge {
  requestId: string;
  tokens: number;
  microUsd: number;
  leaseUntil: number;
  windows: BudgetWindows;
}

export interface BudgetWindows {
  day: string;
  dayEndsAt: number;
  month: string;
  monthEndsAt: number;
}

export interface Refusal {
  /** Index into the plans of the admission. */
  scopeIndex: number;
  dimension: Dimension;
  retryAfterMs: number;
  /** False when the request can never fit (it alone is more than the limit). */
  fits: boolean;
  /** Amount already used in the dimension (micro-dollars, tokens or requests in flight). */
  used: number;
}

/**
 * A correction applied after admission: settle (real usage), cancel (give
 * back everything but the request) or roll back (a later scope refused).
 */
export interface Adjustment {
  requestsDelta: number;
  tokensDelta: number;
  microUsdDelta: number;
  day: string;
  month: string;
  releaseRequestId: string | undefined;
}

export type BudgetDimension = 'daily_usd' | 'monthly_usd';

// ---------------------------------------------------------------- the limits a record is counted against

/**
 * Issue 20, "one truth for ops tools". An ops view (`llm-proxy limits`, the page) measured a
 * scope's usage against the limits of its own config file, which need not be the workers'.
 *
 * Decision: the limits an admission enforces go into the scope's record, the one it already
 * writes (the NATS KV value, the Redis hash, the memory map), with the fingerprint of the writing
 * worker's `limits` config, its host name and the time; `standing()` measures against those, and
 * names the local config only as a second, labelled opinion. Not a question to the workers over
 * the bus: that would be a new request on a DESIGN.md subject, and it would answer for the one
 * worker that picked it up, not for what was counted. The hot path pays no round trip: the
 * admission compares the record's limits with its own and writes them only when they differ (a
 * new record, a changed config), in the write or script it runs anyway. A refusal writes them too
 * in that case (in NATS best effort: once, a lost race left to the next request), and nothing else:
 * otherwise a scope whose every request is now refused would keep showing the old limits. Records without limits (older workers) still load: the local config is
 * used for them, and said to be.
 */
export interface RecordedLimits {
  rpm?: number;
  tpm?: number;
  concurrent?: number;
  /** Micro-dollars. */
  daily?: number;
  /** Micro-dollars. */
  monthly?: number;
  /** `configFingerprint` of the writing worker's limits config. */
  config: string;
  /** The host name of the worker that wrote them (the first, of the workers with this config). */
  host?: string;
  /** When they were written (the writer's clock, ms since the epoch): in force on this record since then. */
  at: number;
}

/** What a limiter writes into the records of one scope plan, worked out once per plan. */
export interface LimitStamp {
  /** The record's `limits`, but the time. */
  fields: Omit<RecordedLimits, 'at'>;
  /** The limits and the config fingerprint as JSON (not the host): what the Redis script stores and compares. */
  json: string;
}

const LIMIT_FIELDS = ['rpm', 'tpm', 'concurrent', 'daily', 'monthly'] as const;

function sortedJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(sortedJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, entry]) => entry !== undefined)
      .sort(([left], [right]) => (left < right ? -1 : left > right ? 1 : 0));
    return `{${entries.map(([key, entry]) => `${JSON.stringify(key)}:${sortedJson(entry)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** 12 hex digits of the SHA-256 of the limit values of a config (key order does not matter): tells configs apart. */
export function configFingerprint(config: Pick<LimitsConfig, 'default' | 'agents' | 'microdaos' | 'models'>): string {
  const values = { default: config.default, agents: config.agents, microdaos: config.microdaos, models: config.models };
  return createHash('sha256').update(sortedJson(values)).digest('hex').slice(0, 12);
}

export function limitStamp(limits: ScopeLimits, origin: { config: string; host?: string | undefined }): LimitStamp {
  const values: Omit<RecordedLimits, 'at' | 'host' | 'config'> = {};
  if (limits.rpm !== undefined) values.rpm = limits.rpm;
  if (limits.tpm !== undefined) values.tpm = limits.tpm;
  if (limits.concurrent !== undefined) values.concurrent = limits.concurrent;
  if (limits.dailyMicroUsd !== undefined) values.daily = limits.dailyMicroUsd;
  if (limits.monthlyMicroUsd !== undefined) values.monthly = limits.monthlyMicroUsd;
  const fields: LimitStamp['fields'] = { ...values, config: origin.config };
  if (origin.host !== undefined && origin.host !== '') fields.host = origin.host;
  return { fields, json: JSON.stringify({ ...values, config: origin.config }) };
}

/** The record's limits when they are well formed (a record is read from a shared store: any version wrote it). */
export function parseRecordedLimits(value: unknown): RecordedLimits | undefined {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const candidate = value as Record<string, unknown>;
  if (typeof candidate.config !== 'string' || typeof candidate.at !== 'number' || !Number.isFinite(candidate.at))
    return undefined;
  const recorded: RecordedLimits = { config: candidate.config, at: candidate.at };
  for (const field of LIMIT_FIELDS) {
    const limit = candidate[field];
    if (limit === undefined) continue;
    if (typeof limit !== 'number' || !Number.isFinite(limit) || limit < 0) return undefined;
    recorded[field] = limit;
  }
  if (typeof candidate.host === 'string') recorded.host = candidate.host;
  return recorded;
}

/** The same limits from the same config (host and time aside). */
export function sameStamp(recorded: unknown, stamp: LimitStamp): boolean {
  if (recorded === null || typeof recorded !== 'object') return false;
  const record = recorded as Record<string, unknown>;
  return record.config === stamp.fields.config && LIMIT_FIELDS.every((field) => record[field] === stamp.fields[field]);
}

/**
 * The state with the stamp's limits, written at `now` when the record holds other ones; the same
 * state when it already holds these (so `at` is when they came into force, and Redis writes them
 * only then) or without a stamp.
 */
export function withStamp(state: ScopeState, stamp: LimitStamp | undefined, now: number): ScopeState {
  if (stamp === undefined || sameStamp(state.limits, stamp)) return state;
  return { ...state, limits: { ...stamp.fields, at: now } };
}

/** After a refusal: the state to write when the record holds other limits than the stamp's, else undefined. */
export function restamped(state: ScopeState, stamp: LimitStamp | undefined, now: number): ScopeState | undefined {
  const next = withStamp(state, stamp, now);
  return next === state ? undefined : next;
}

export function recordedScopeLimits(recorded: RecordedLimits): ScopeLimits {
  const limits: ScopeLimits = {};
  if (recorded.rpm !== undefined) limits.rpm = recorded.rpm;
  if (recorded.tpm !== undefined) limits.tpm = recorded.tpm;
  if (recorded.concurrent !== undefined) limits.concurrent = recorded.concurrent;
  if (recorded.daily !== undefined) limits.dailyMicroUsd = recorded.daily;
  if (recorded.monthly !== undefined) limits.monthlyMicroUsd = recorded.monthly;
  return limits;
}

export function sameScopeLimits(left: ScopeLimits, right: ScopeLimits): boolean {
  return (
    left.rpm === right.rpm &&
    left.tpm === right.tpm &&
    left.concurrent === right.concurrent &&
    left.dailyMicroUsd === right.dailyMicroUsd &&
    left.monthlyMicroUsd === right.monthlyMicroUsd
  );
}

// ---------------------------------------------------------------- budgets nearly spent

/** A budget is nearly spent from this share of it on (an alert's trigger: `llm_proxy.limit.budget_near`). */
export const BUDGET_NEAR_PERCENT = 90;

/** Integer micro-dollars, so no float rounding: the Redis script makes the same comparison. A budget of 0 is never "near". */
export function isBudgetNear(usedMicroUsd: number, limitMicroUsd: number): boolean {
  return limitMicroUsd > 0 && usedMicroUsd * 100 >= limitMicroUsd * BUDGET_NEAR_PERCENT;
}

// ---------------------------------------------------------------- keys, windows

/**
 * NATS KV keys allow `[-/_=.A-Za-z0-9]`; agent ids contain `:`. Every other
 * character (and `=` and `.` themselves) is written `=XX` per UTF-8 byte, so
 * an id is always one readable token: `agent:sofia` → `agent=3Asofia`.
 */
export function encodeKeyToken(id: string): string {
  let encoded = '';
  for (const byte of Buffer.from(id, 'utf8')) {
    const character = String.fromCharCode(byte);
    encoded += /[A-Za-z0-9_-]/.test(character) ? character : `=${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return encoded === '' ? '=' : encoded;
}

export function scopeFor(kind: ScopeKind, id: string): Scope {
  return { kind, id, key: `${kind}.${encodeKeyToken(id)}` };
}

export function budgetWindows(now: number): BudgetWindows {
  const date = new Date(now);
  const year = date.getUTCFullYear();
  const month = date.getUTCMonth();
  const day = date.getUTCDate();
  const pad = (value: number) => String(value).padStart(2, '0');
  return {
    day: `${year}-${pad(month + 1)}-${pad(day)}`,
    dayEndsAt: Date.UTC(year, month, day + 1),
    month: `${year}-${pad(month + 1)}`,
    monthEndsAt: Date.UTC(year, month + 1, 1),
  };
}

export function toMicroUsd(usd: number, rounding: 'up' | 'nearest'): number {
  if (!Number.isFinite(usd) || usd <= 0) return 0;
  // Round away float noise first (0.0001 * 3 = 0.00030000000000000003) so "up" does not add a micro-dollar.
  const micro = Math.round(usd * 1e12) / 1e6;
  return rounding === 'up' ? Math.ceil(micro) : Math.round(micro);
}

// ---------------------------------------------------------------- configuration

function pick(override: number | null | undefined, fallback: number | null | undefined): number | undefined {
  const value = override === undefined ? fallback : override;
  return value === null || value === undefined ? undefined : value;
}

function toScopeLimits(set: LimitSetConfig, base: LimitSetConfig = {}): ScopeLimits {
  const limits: ScopeLimits = {};
  const rpm = pick(set.rpm, base.rpm);
  const tpm = pick(set.tpm, base.tpm);
  const concurrent = pick(set.concurrent, base.concurrent);
  const daily = pick(set.daily_usd, base.daily_usd);
  const monthly = pick(set.monthly_usd, base.monthly_usd);
  if (rpm !== undefined) limits.rpm = rpm;
  if (tpm !== undefined) limits.tpm = tpm;
  if (concurrent !== undefined) limits.concurrent = concurrent;
  if (daily !== undefined) limits.dailyMicroUsd = toMicroUsd(daily, 'nearest');
  if (monthly !== undefined) limits.monthlyMicroUsd = toMicroUsd(monthly, 'nearest');
  return limits;
}

export function hasAnyLimit(limits: ScopeLimits): boolean {
  return Object.keys(limits).length > 0;
}

export function hasBudget(limits: ScopeLimits): boolean {
  return limits.dailyMicroUsd !== undefined || limits.monthlyMicroUsd !== undefined;
}

export function hasRate(limits: ScopeLimits): boolean {
  return limits.rpm !== undefined || limits.tpm !== undefined || limits.concurrent !== undefined;
}

/** Agents without an id share one scope, like their usage events (DESIGN.md: `anonymous`). */
export const ANONYMOUS_AGENT = 'anonymous';

/**
 * The scopes a request is counted in, each with its limits: the agent
 * (`default` overridden by `agents.<id>`), its microDAO and its model when
 * those have limits configured. Scopes without any limit are not touched.
 */
export function plansFor(
  config: Pick<LimitsConfig, 'default' | 'agents' | 'microdaos' | 'models'>,
  target: { agentId: string | undefined; microdaoId: string | undefined; model: string | undefined },
): ScopePlan[] {
  const plans: ScopePlan[] = [];
  const agentId = target.agentId || ANONYMOUS_AGENT;
  const agentLimits = toScopeLimits(config.agents[agentId] ?? {}, config.default);
  if (hasAnyLimit(agentLimits)) plans.push({ scope: scopeFor('agent', agentId), limits: agentLimits });
  const microdao = target.microdaoId === undefined ? undefined : config.microdaos[target.microdaoId];
  if (target.microdaoId !== undefined && microdao !== undefined) {
    const limits = toScopeLimits(microdao);
    if (hasAnyLimit(limits)) plans.push({ scope: scopeFor('microdao', target.microdaoId), limits });
  }
  const model = target.model === undefined ? undefined : config.models[target.model];
  if (target.model !== undefined && model !== undefined) {
    const limits = toScopeLimits(model);
    if (hasAnyLimit(limits)) plans.push({ scope: scopeFor('model', target.model), limits });
  }
  return plans;
}

/**
 * A scope's limits in this config, possibly none (plansFor leaves such scopes out). A key's limits
 * live in the key store, not here: none.
 */
export function configuredLimits(
  config: Pick<LimitsConfig, 'default' | 'agents' | 'microdaos' | 'models'>,
  scope: Pick<Scope, 'kind' | 'id'>,
): ScopeLimits {
  switch (scope.kind) {
    case 'agent':
      return toScopeLimits(config.agents[scope.id] ?? {}, config.default);
    case 'microdao':
      return toScopeLimits(config.microdaos[scope.id] ?? {});
    case 'model':
      return toScopeLimits(config.models[scope.id] ?? {});
    case 'key':
      return {};
  }
}

/** A per-agent key's own scope (`key.<id>`), or undefined when the key has no limit of its own. */
export function keyPlanFor(key: { id: string; limits: LimitSetConfig }): ScopePlan | undefined {
  const limits = toScopeLimits(key.limits);
  return hasAnyLimit(limits) ? { scope: scopeFor('key', key.id), limits } : undefined;
}

// ---------------------------------------------------------------- admission

function gcraNext(tat: number | undefined, now: number, cost: number, limitPerMinute: number): number {
  return Math.max(tat ?? now, now) + (cost * RATE_WINDOW_MS) / limitPerMinute;
}

function liveLeases(leases: Record<string, number> | undefined, now: number): Record<string, number> {
  const live: Record<string, number> = {};
  for (const [requestId, expiresAt] of Object.entries(leases ?? {})) if (expiresAt > now) live[requestId] = expiresAt;
  return live;
}

/**
 * Every refusal the scope would give this charge, or its new state when it
 * admits, with the budgets that state leaves nearly spent (`isBudgetNear`).
 * The state passed in is not modified.
 */
export function evaluateScope(
  state: ScopeState,
  limits: ScopeLimits,
  charge: Charge,
  now: number,
  scopeIndex: number,
): { refusals: Refusal[]; next: ScopeState; nearlySpent: BudgetDimension[] } {
  const refusals: Refusal[] = [];
  const nearlySpent: BudgetDimension[] = [];
  const next: ScopeState = { ...state };

  if (limits.rpm !== undefined) {
    const tat = gcraNext(state.rpm_tat, now, 1, limits.rpm);
    if (tat - now > RATE_WINDOW_MS + EPSILON_MS) {
      refusals.push({
        scopeIndex,
        dimension: 'rpm',
        retryAfterMs: tat - now - RATE_WINDOW_MS,
        fits: true,
        used: limits.rpm,
      });
    } else next.rpm_tat = tat;
  }

  if (limits.tpm !== undefined) {
    const tat = gcraNext(state.tpm_tat, now, charge.tokens, limits.tpm);
    const used = Math.max(
      0,
      Math.ceil(((Math.max(state.tpm_tat ?? now, now) - now) * limits.tpm) / RATE_WINDOW_MS - EPSILON_MS),
    );
    if (charge.tokens > limits.tpm) {
      refusals.push({ scopeIndex, dimension: 'tpm', retryAfterMs: 0, fits: false, used });
    } else if (tat - now > RATE_WINDOW_MS + EPSILON_MS) {
      refusals.push({ scopeIndex, dimension: 'tpm', retryAfterMs: tat - now - RATE_WINDOW_MS, fits: true, used });
    } else next.tpm_tat = tat;
  }

  if (limits.concurrent !== undefined) {
    const leases = liveLeases(state.leases, now);
    const holders = Object.values(leases);
    if (holders.length >= limits.concurrent) {
      const soonest = Math.min(...holders) - now;
      refusals.push({
        scopeIndex,
        dimension: 'concurrent',
        retryAfterMs: Math.min(CONCURRENCY_RETRY_HINT_MS, soonest),
        fits: true,
        used: holders.length,
      });
    } else {
      leases[charge.requestId] = charge.leaseUntil;
      next.leases = leases;
    }
  }

  if (limits.dailyMicroUsd !== undefined) {
    const used = state.day === charge.windows.day ? (state.day_used ?? 0) : 0;
    if (used + charge.microUsd > limits.dailyMicroUsd) {
      refusals.push({
        scopeIndex,
        dimension: 'daily_usd',
        retryAfterMs: charge.windows.dayEndsAt - now,
        fits: charge.microUsd <= limits.dailyMicroUsd,
        used,
      });
    } else {
      next.day = charge.windows.day;
      next.day_used = used + charge.microUsd;
      if (isBudgetNear(next.day_used, limits.dailyMicroUsd)) nearlySpent.push('daily_usd');
    }
  }

  if (limits.monthlyMicroUsd !== undefined) {
    const used = state.month === charge.windows.month ? (state.month_used ?? 0) : 0;
    if (used + charge.microUsd > limits.monthlyMicroUsd) {
      refusals.push({
        scopeIndex,
        dimension: 'monthly_usd',
        retryAfterMs: charge.windows.monthEndsAt - now,
        fits: charge.microUsd <= limits.monthlyMicroUsd,
        used,
      });
    } else {
      next.month = charge.windows.month;
      next.month_used = used + charge.microUsd;
      if (isBudgetNear(next.month_used, limits.monthlyMicroUsd)) nearlySpent.push('monthly_usd');
    }
  }

  return { refusals, next, nearlySpent };
}

/** Nothing in the record matters any more: it is the same as no record (the memory store drops it). */
export function isIdle(state: ScopeState, now: number): boolean {
  if ((state.rpm_tat ?? 0) > now || (state.tpm_tat ?? 0) > now) return false;
  if (Object.values(state.leases ?? {}).some((expiresAt) => expiresAt > now)) return false;
  const windows = budgetWindows(now);
  return state.day !== windows.day && state.month !== windows.month;
}

/** Apply a settle / cancel / rollback to a scope's state; never refuses. */
export function adjustScope(state: ScopeState, limits: ScopeLimits, adjustment: Adjustment, now: number): ScopeState {
  const next: ScopeState = { ...state };
  const shift = (tat: number | undefined, units: number, limit: number): number | undefined => {
    if (units === 0) return tat;
    // Extra usage is charged from now on; a refund only matters while the tat is still ahead of now.
    if (units > 0) return Math.max(tat ?? now, now) + (units * RATE_WINDOW_MS) / limit;
    return tat === undefined ? undefined : tat + (units * RATE_WINDOW_MS) / limit;
  };
  if (limits.rpm !== undefined) {
    const tat = shift(state.rpm_tat, adjustment.requestsDelta, limits.rpm);
    if (tat !== undefined) next.rpm_tat = tat;
  }
  if (limits.tpm !== undefined) {
    const tat = shift(state.tpm_tat, adjustment.tokensDelta, limits.tpm);
    if (tat !== undefined) next.tpm_tat = tat;
  }
  if (adjustment.releaseRequestId !== undefined && state.leases !== undefined) {
    const leases = liveLeases(state.leases, now);
    delete leases[adjustment.releaseRequestId];
    next.leases = leases;
  }
  // A reservation made in a window that has since ended stays with that window.
  if (limits.dailyMicroUsd !== undefined && state.day === adjustment.day) {
    next.day_used = Math.max(0, (state.day_used ?? 0) + adjustment.microUsdDelta);
  }
  if (limits.monthlyMicroUsd !== undefined && state.month === adjustment.month) {
    next.month_used = Math.max(0, (state.month_used ?? 0) + adjustment.microUsdDelta);
  }
  return next;
}

/**
 * The refusal a client hears when several limits refuse: a budget first (402
 * is not cured by waiting a minute), then one that can never fit, then the
 * longest wait, since the request needs every limit to admit it.
 */
export function decisiveRefusal(refusals: Refusal[]): Refusal | undefined {
  const rank = (refusal: Refusal) =>
    (refusal.dimension === 'daily_usd' || refusal.dimension === 'monthly_usd' ? 2 : 0) + (refusal.fits ? 0 : 1);
  let decisive: Refusal | undefined;
  for (const refusal of refusals) {
    if (
      decisive === undefined ||
      rank(refusal) > rank(decisive) ||
      (rank(refusal) === rank(decisive) && refusal.retryAfterMs > decisive.retryAfterMs)
    ) {
      decisive = refusal;
    }
  }
  return decisive;
}

// ---------------------------------------------------------------- standing

export interface DimensionStanding {
  dimension: Dimension;
  /** `minute` (rolling, GCRA), `in flight`, or the budget window (`2026-11-27`, `2026-11`). */
  window: string;
  limit: number;
  used: number;
  remaining: number;
  /** When the dimension is fully free again (ms from now), 0 when it already is. */
  resetsInMs: number;
}

/** Where a scope stands now; budget amounts in USD, tokens and requests as counts. */
export function describeScope(state: ScopeState, limits: ScopeLimits, now: number): DimensionStanding[] {
  const rows: DimensionStanding[] = [];
  const rate = (dimension: Dimension, tat: number | undefined, limit: number) => {
    const ahead = Math.max(0, (tat ?? now) - now);
    // max(0, …): with nothing ahead, ceil(-ε) would be -0.
    const used = Math.max(0, Math.min(limit, Math.ceil((ahead * limit) / RATE_WINDOW_MS - EPSILON_MS)));
    rows.push({
      dimension,
      window: 'minute',
      limit,
      used,
      remaining: Math.max(0, limit - used),
      resetsInMs: Math.ceil(ahead),
    });
  };
  if (limits.rpm !== undefined) rate('rpm', state.rpm_tat, limits.rpm);
  if (limits.tpm !== undefined) rate('tpm', state.tpm_tat, limits.tpm);
  if (limits.concurrent !== undefined) {
    const holders = Object.values(liveLeases(state.leases, now));
    rows.push({
      dimension: 'concurrent',
      window: 'in flight',
      limit: limits.concurrent,
      used: holders.length,
      remaining: Math.max(0, limits.concurrent - holders.length),
      resetsInMs: holders.length === 0 ? 0 : Math.max(...holders) - now,
    });
  }
  const windows = budgetWindows(now);
  const budget = (
    dimension: Dimension,
    window: string,
    stateWindow: string | undefined,
    usedMicro: number | undefined,
    limitMicro: number,
    endsAt: number,
  ) => {
    const used = stateWindow === window ? (usedMicro ?? 0) : 0;
    rows.push({
      dimension,
      window,
      limit: limitMicro / 1e6,
      used: used / 1e6,
      remaining: Math.max(0, limitMicro - used) / 1e6,
      resetsInMs: used === 0 ? 0 : endsAt - now,
    });
  };
  if (limits.dailyMicroUsd !== undefined)
    budget('daily_usd', windows.day, state.day, state.day_used, limits.dailyMicroUsd, windows.dayEndsAt);
  if (limits.monthlyMicroUsd !== undefined)
    budget('monthly_usd', windows.month, state.month, state.month_used, limits.monthlyMicroUsd, windows.monthEndsAt);
  return rows;
}

// ---------------------------------------------------------------- slices of shared scopes (issue 21)

/** Amounts of a scope's room: requests (rpm), tokens (tpm), micro-dollars (the daily and monthly budgets alike). */
export interface SliceAmounts {
  requests: number;
  tokens: number;
  microUsd: number;
}

/**
 * One compare-and-swap between a worker's slice of a shared scope and the scope's record: first give
 * back (`give`: unused room returned, negative amounts charge usage beyond it; `release`: slot ids
 * freed), then take as much as fits of `want`, never more; the whole want when the record has room.
 */
export interface SliceExchange {
  give: SliceAmounts & { day: string; month: string; release: string[] };
  want: SliceAmounts & { slotIds: string[]; slotUntil: number; windows: BudgetWindows };
}

export interface SliceGrant extends SliceAmounts {
  slotIds: string[];
}

/** Room left in a GCRA dimension now, in units (a burst's worth when the record is idle). */
function gcraRoom(tat: number | undefined, now: number, limit: number): number {
  const ahead = Math.max(tat ?? now, now) - now;
  return Math.max(0, Math.floor(((RATE_WINDOW_MS - ahead) * limit) / RATE_WINDOW_MS + EPSILON_MS));
}

export function exchangeSlice(
  state: ScopeState,
  limits: ScopeLimits,
  exchange: SliceExchange,
  now: number,
): { next: ScopeState; granted: SliceGrant } {
  const { give, want } = exchange;
  const next = adjustScope(
    state,
    limits,
    {
      requestsDelta: -give.requests,
      tokensDelta: -give.tokens,
      microUsdDelta: -give.microUsd,
      day: give.day,
      month: give.month,
      releaseRequestId: undefined,
    },
    now,
  );
  if (give.release.length > 0 && next.leases !== undefined) {
    const leases = liveLeases(next.leases, now);
    for (const id of give.release) delete leases[id];
    next.leases = leases;
  }
  const granted: SliceGrant = { requests: want.requests, tokens: want.tokens, microUsd: want.microUsd, slotIds: [] };
  if (limits.rpm !== undefined) {
    granted.requests = Math.min(want.requests, gcraRoom(next.rpm_tat, now, limits.rpm));
    if (granted.requests > 0) next.rpm_tat = gcraNext(next.rpm_tat, now, granted.requests, limits.rpm);
  }
  if (limits.tpm !== undefined) {
    granted.tokens = Math.min(want.tokens, gcraRoom(next.tpm_tat, now, limits.tpm));
    if (granted.tokens > 0) next.tpm_tat = gcraNext(next.tpm_tat, now, granted.tokens, limits.tpm);
  }
  const dayUsed = next.day === want.windows.day ? (next.day_used ?? 0) : 0;
  const monthUsed = next.month === want.windows.month ? (next.month_used ?? 0) : 0;
  if (limits.dailyMicroUsd !== undefined)
    granted.microUsd = Math.min(granted.microUsd, Math.max(0, limits.dailyMicroUsd - dayUsed));
  if (limits.monthlyMicroUsd !== undefined)
    granted.microUsd = Math.min(granted.microUsd, Math.max(0, limits.monthlyMicroUsd - monthUsed));
  if (limits.dailyMicroUsd !== undefined && granted.microUsd > 0) {
    next.day = want.windows.day;
    next.day_used = dayUsed + granted.microUsd;
  }
  if (limits.monthlyMicroUsd !== undefined && granted.microUsd > 0) {
    next.month = want.windows.month;
    next.month_used = monthUsed + granted.microUsd;
  }
  if (limits.concurrent !== undefined && want.slotIds.length > 0) {
    const leases = liveLeases(next.leases, now);
    const free = Math.max(0, limits.concurrent - Object.keys(leases).length);
    granted.slotIds = want.slotIds.slice(0, free);
    for (const id of granted.slotIds) leases[id] = want.slotUntil;
    next.leases = leases;
  } else if (limits.concurrent === undefined) {
    granted.slotIds = want.slotIds;
  }
  return { next, granted };
}
