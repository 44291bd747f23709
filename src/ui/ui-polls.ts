/**
 * What the operations page asks the bus every few seconds: the services (`$SRV.STATS` of the
 * workers and of the aggregators), spending (`llm.proxy.usage`) and the limits' standing (the
 * deployments are in ui-deployments.ts). Each function returns plain rows for the page.
 */
import { Empty, type NatsConnection, RequestError } from '@nats-io/nats-core';
import type { LlmProxyClient } from '../client/index.js';
import type { UsageGroup, UsageQueryReply } from '../contract/usage-query.js';
import type { ScopeStanding } from '../limits/index.js';
import type { WorkerStats } from '../worker/counters.js';

/** The workers' and the aggregators' micro-service names (`$SRV.*.<name>`). */
export const WORKER_SERVICE = 'llm-proxy';
export const AGGREGATOR_SERVICE = 'llm-usage';
/** Rows kept of each list: a page is read by people. */
export const MAX_SERVICES = 200;
export const TOP_N = 10;

export interface WorkerRow {
  id: string;
  version: string;
  started: string;
  uptime_s: number;
  in_flight: number;
  max_in_flight: number;
  requests: number;
  ok: number;
  errors: number;
  paused: boolean;
  pending_events: number;
}

export interface AggregatorRow {
  id: string;
  version: string;
  started: string;
  uptime_s: number;
  requests: number;
  errors: number;
  applied_seq: number | null;
}

interface StatsAnswer {
  id?: unknown;
  version?: unknown;
  started?: unknown;
  endpoints?: Array<{ num_requests?: number; num_errors?: number; data?: unknown }>;
}

/** Every answer to a `$SRV` request, until none came for `stallMs` or `maxWaitMs` passed. */
async function gather(connection: NatsConnection, subject: string, maxWaitMs: number): Promise<StatsAnswer[]> {
  const answers: StatsAnswer[] = [];
  try {
    const replies = await connection.requestMany(subject, Empty, {
      strategy: 'stall',
      stall: Math.min(300, maxWaitMs),
      maxWait: maxWaitMs,
    });
    for await (const message of replies) {
      if (answers.length >= MAX_SERVICES) continue;
      try {
        answers.push(message.json() as StatsAnswer);
      } catch {
        // Not a micro-service answer: left out.
      }
    }
  } catch (error) {
    // No responders is an answer: none runs. Anything else after some answers keeps those.
    if (!(error instanceof RequestError && error.isNoResponders()) && answers.length === 0) throw error;
  }
  return answers;
}

const text = (value: unknown): string => (typeof value === 'string' ? value.slice(0, 120) : '');
const count = (value: unknown): number => (typeof value === 'number' && Number.isFinite(value) ? value : 0);
const uptime = (started: string, now: number): number => {
  const at = Date.parse(started);
  return Number.isFinite(at) ? Math.max(0, Math.round((now - at) / 1_000)) : 0;
};

export async function pollWorkers(connection: NatsConnection, maxWaitMs: number): Promise<WorkerRow[]> {
  const now = Date.now();
  const answers = await gather(connection, `$SRV.STATS.${WORKER_SERVICE}`, maxWaitMs);
  return answers
    .map((answer): WorkerRow => {
      const stats = (answer.endpoints ?? []).map((endpoint) => endpoint.data).find(isWorkerStats);
      const started = text(answer.started);
      return {
        id: text(answer.id),
        version: text(answer.version),
        started,
        uptime_s: uptime(started, now),
        in_flight: count(stats?.in_flight),
        max_in_flight: count(stats?.max_in_flight),
        requests: count(stats?.requests),
        ok: count(stats?.ok),
        errors: count(stats?.errors),
        paused: stats?.paused === true,
        pending_events: count(stats?.usage_events?.pending),
      };
    })
    .sort((left, right) => left.started.localeCompare(right.started) || left.id.localeCompare(right.id));
}

function isWorkerStats(data: unknown): data is WorkerStats {
  return typeof data === 'object' && data !== null && 'worker_id' in data;
}

export async function pollAggregators(connection: NatsConnection, maxWaitMs: number): Promise<AggregatorRow[]> {
  const now = Date.now();
  const answers = await gather(connection, `$SRV.STATS.${AGGREGATOR_SERVICE}`, maxWaitMs);
  return answers
    .map((answer): AggregatorRow => {
      const endpoints = answer.endpoints ?? [];
      const data = endpoints[0]?.data as { applied_seq?: unknown } | undefined;
      const started = text(answer.started);
      return {
        id: text(answer.id),
        version: text(answer.version),
        started,
        uptime_s: uptime(started, now),
        requests: endpoints.reduce((sum, endpoint) => sum + count(endpoint.num_requests), 0),
        errors: endpoints.reduce((sum, endpoint) => sum + count(endpoint.num_errors), 0),
        applied_seq: typeof data?.applied_seq === 'number' ? data.applied_seq : null,
      };
    })
    .sort((left, right) => left.id.localeCompare(right.id));
}

export interface SpendRow {
  key: string;
  requests: number;
  errors: number;
  rejected: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  cost_usd: number;
}

export interface SpendPeriod {
  since: string;
  totals: Omit<SpendRow, 'key'>;
  models: SpendRow[];
  microdaos: SpendRow[];
  agents: SpendRow[];
}

function spendRow(key: string, totals: UsageQueryReply | UsageGroup): SpendRow {
  return {
    key: key.slice(0, 200),
    requests: totals.total_requests,
    errors: totals.errors,
    rejected: totals.rejected,
    prompt_tokens: totals.prompt_tokens,
    completion_tokens: totals.completion_tokens,
    total_tokens: totals.total_tokens,
    cost_usd: totals.cost_usd,
  };
}

/** The groups as rows, the highest cost first (then the most tokens); the top `limit` only. */
function topRows(reply: UsageQueryReply, field: 'model' | 'agent' | 'microdao', limit: number): SpendRow[] {
  return reply.groups
    .map((group) => spendRow(group.key[field] ?? '(none)', group))
    .sort((left, right) => right.cost_usd - left.cost_usd || right.total_tokens - left.total_tokens)
    .slice(0, limit);
}

export function startOfUtcDay(now: number): string {
  const date = new Date(now);
  return new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate())).toISOString();
}

export function startOfUtcMonth(now: number): string {
  const date = new Date(now);
  return new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), 1)).toISOString();
}

/** Today's and this month's usage per model, microDAO and agent (the top spenders), from the aggregators. */
export async function pollSpend(
  client: LlmProxyClient,
  timeoutMs: number,
): Promise<{ today: SpendPeriod; month: SpendPeriod }> {
  const now = Date.now();
  const period = async (since: string): Promise<SpendPeriod> => {
    const [models, microdaos, agents] = await Promise.all(
      (['model', 'microdao', 'agent'] as const).map((group) => client.usage({ since, group_by: group }, { timeoutMs })),
    );
    const { key: _key, ...totals } = spendRow('', agents as UsageQueryReply);
    return {
      since,
      totals,
      models: topRows(models as UsageQueryReply, 'model', 50),
      microdaos: topRows(microdaos as UsageQueryReply, 'microdao', TOP_N),
      agents: topRows(agents as UsageQueryReply, 'agent', TOP_N),
    };
  };
  const [today, month] = await Promise.all([period(startOfUtcDay(now)), period(startOfUtcMonth(now))]);
  return { today, month };
}

/** What reads an agent's standing: the limiter's `standing`, whatever it returns. */
export type StandingReader = (agentId: string, options: { microdaoId?: string }) => Promise<ScopeStanding[]>;

export interface LimitRow {
  agent_id: string;
  scope: string;
  dimension: string;
  window: string;
  used: number;
  limit: number;
  remaining: number;
  resets_in_ms: number;
  /** used / limit. */
  ratio: number;
  over: boolean;
  /** `workers`: the limits the workers enforce (from the scope's record); `local`: this process's config. */
  limits_from: string | null;
  /** This process's config says otherwise than the limits shown. */
  differs: boolean;
}

/** Where a standing's limits come from, when the limiter says (read loosely: the field is recent). */
function sourceOf(scope: ScopeStanding): { limits_from: string | null; differs: boolean } {
  const described = scope as { limitsFrom?: unknown; local?: { differs?: unknown } };
  return {
    limits_from: typeof described.limitsFrom === 'string' ? described.limitsFrom : null,
    differs: described.local?.differs === true,
  };
}

/** A dimension this full or more is "near" its limit. */
export const NEAR_LIMIT = 0.8;
/** Agents whose standing is read per poll. */
export const MAX_STANDING_AGENTS = 25;

/** The dimensions of these agents that are near or over their limit, the fullest first. */
export async function pollLimits(
  read: StandingReader,
  agents: Array<{ agentId: string; microdaoId: string | undefined }>,
): Promise<LimitRow[]> {
  const rows: LimitRow[] = [];
  const seen = new Set<string>();
  for (const { agentId, microdaoId } of agents.slice(0, MAX_STANDING_AGENTS)) {
    const scopes = await read(agentId, microdaoId === undefined ? {} : { microdaoId });
    for (const scope of scopes) {
      for (const row of scope.dimensions) {
        const ratio = row.limit > 0 ? row.used / row.limit : row.used > 0 ? 1 : 0;
        if (ratio < NEAR_LIMIT && row.remaining > 0) continue;
        // A microDAO's or a model's row appears once, whichever of its agents brought it.
        const key = JSON.stringify([scope.kind, scope.id, row.dimension]);
        if (seen.has(key)) continue;
        seen.add(key);
        rows.push({
          agent_id: agentId,
          scope: `${scope.kind} ${scope.id}`.slice(0, 200),
          dimension: row.dimension,
          window: row.window,
          used: row.used,
          limit: row.limit,
          remaining: row.remaining,
          resets_in_ms: row.resetsInMs,
          ratio,
          over: row.remaining <= 0,
          ...sourceOf(scope),
        });
      }
    }
  }
  return rows.sort((left, right) => right.ratio - left.ratio);
}
