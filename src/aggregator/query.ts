import { ProxyError } from '../contract/errors.js';
import { USAGE_GROUP_KEYS, usageQuerySchema, type UsageGroupKey, type UsageTotals } from '../contract/usage-query.js';
import { counter, type Cell, type CounterName, type UsageRollups } from './rollups.js';
import { dayLabel, hourLabel, HOUR_MS, parseInstant, sinceHourOf, untilHourOf } from './time-buckets.js';

/** Group key value for an event without that field (no agent id, no provider, no key…). */
export const NONE_LABEL = '(none)';

export interface ParsedUsageQuery {
  agent_id?: string;
  microdao_id?: string;
  model?: string;
  provider?: string;
  key_id?: string;
  /** First hour included. */
  sinceHour?: number;
  /** First hour excluded. */
  untilHour?: number;
  groupBy: UsageGroupKey[];
}

/** The reply's totals: the contract's fields, then the counts it leaves out. */
export interface AggregatedTotals extends UsageTotals {
  /** Of prompt_tokens, those the providers served from their prompt caches. */
  cached_prompt_tokens: number;
  ok: number;
  cancelled: number;
  tokens_estimated: number;
}

export interface AggregatedGroup extends AggregatedTotals {
  key: Partial<Record<UsageGroupKey, string>>;
}

export interface AggregatedReply extends AggregatedTotals {
  /** The range actually covered, after rounding to whole hours (null: open). */
  since: string | null;
  until: string | null;
  groups: AggregatedGroup[];
}

function invalid(message: string): ProxyError {
  return new ProxyError('invalid_request', message, { retryable: false });
}

/** Validate a query body (already JSON-decoded); bad fields become `invalid_request` naming the field. */
export function parseUsageQuery(body: unknown, now: number): ParsedUsageQuery {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw invalid('the query must be a JSON object');
  const result = usageQuerySchema.safeParse(body);
  if (!result.success) {
    const issue = result.error.issues[0];
    if (issue === undefined) throw invalid('invalid query');
    if (issue.code === 'unrecognized_keys')
      throw invalid(`unknown field ${issue.keys.map((key) => `"${key}"`).join(', ')}`);
    const path = issue.path.length === 0 ? 'query' : String(issue.path[0]);
    if (path === 'group_by') throw invalid(`group_by: must be one or more of ${USAGE_GROUP_KEYS.join(', ')}`);
    throw invalid(`${path}: ${issue.message}`);
  }
  const query = result.data;
  const parsed: ParsedUsageQuery = { groupBy: [] };
  for (const field of ['agent_id', 'microdao_id', 'model', 'provider', 'key_id'] as const) {
    const value = query[field];
    if (value !== undefined) parsed[field] = value;
  }
  for (const field of ['since', 'until'] as const) {
    const value = query[field];
    if (value === undefined) continue;
    const instant = parseInstant(value, now);
    if (instant === undefined)
      throw invalid(
        `${field}: ${JSON.stringify(value)} is neither an ISO 8601 timestamp nor a span such as 7d, 24h, 30m`,
      );
    if (field === 'since') parsed.sinceHour = sinceHourOf(instant);
    else parsed.untilHour = untilHourOf(instant);
  }
  if (parsed.sinceHour !== undefined && parsed.untilHour !== undefined && parsed.sinceHour >= parsed.untilHour) {
    throw invalid('since: must be before until');
  }
  const groupBy = query.group_by === undefined ? [] : Array.isArray(query.group_by) ? query.group_by : [query.group_by];
  parsed.groupBy = [...new Set(groupBy)];
  return parsed;
}

/** Sums of the counters; cost in BigInt so that totals over many cells stay exact. */
class Accumulator {
  readonly counts = new Map<CounterName, number>();
  costNano = 0n;

  add(cell: Cell): void {
    for (const name of [
      'requests',
      'ok',
      'error',
      'rejected',
      'cancelled',
      'cached',
      'tokens_estimated',
      'prompt_tokens',
      'completion_tokens',
      'total_tokens',
      'latency_us',
      'cached_prompt_tokens',
    ] as const) {
      this.counts.set(name, (this.counts.get(name) ?? 0) + counter(cell, name));
    }
    this.costNano += BigInt(counter(cell, 'cost_nanousd'));
  }

  totals(): AggregatedTotals {
    return totalsOf((name) => this.counts.get(name) ?? 0, this.costNano);
  }
}

/**
 * The reply's totals from summed counters (`get` by the rollups' counter names; cost in nano-dollars):
 * the one place a reply's numbers are formed, for the aggregator and the PostgreSQL log alike.
 */
export function totalsOf(get: (name: CounterName) => number, costNano: bigint): AggregatedTotals {
  const requests = get('requests');
  return {
    total_requests: requests,
    total_tokens: get('total_tokens'),
    avg_latency_ms: averageLatencyMs(get('latency_us'), requests),
    success_rate: requests === 0 ? 0 : get('ok') / requests,
    prompt_tokens: get('prompt_tokens'),
    completion_tokens: get('completion_tokens'),
    cached_prompt_tokens: get('cached_prompt_tokens'),
    cost_usd: nanoToUsd(costNano),
    ok: get('ok'),
    errors: get('error'),
    rejected: get('rejected'),
    cancelled: get('cancelled'),
    cached: get('cached'),
    tokens_estimated: get('tokens_estimated'),
  };
}

/** Mean latency in ms, to the microsecond. */
export function averageLatencyMs(latencySumMicros: number, requests: number): number {
  return requests === 0 ? 0 : Math.round(latencySumMicros / requests) / 1000;
}

export function nanoToUsd(nano: bigint): number {
  return Number(nano) / 1e9;
}

function matches(cell: Cell, query: ParsedUsageQuery): boolean {
  const { agent, microdao, model, provider, key } = cell.dimensions;
  return (
    (query.agent_id === undefined || agent === query.agent_id) &&
    (query.microdao_id === undefined || microdao === query.microdao_id) &&
    (query.model === undefined || model === query.model) &&
    (query.provider === undefined || provider === query.provider) &&
    (query.key_id === undefined || key === query.key_id)
  );
}

/** The value of group key `key` for a cell of hour `hour` ({@link NONE_LABEL} for a missing field). */
export function groupValue(key: UsageGroupKey, hour: number, cell: Pick<Cell, 'dimensions'>): string {
  switch (key) {
    case 'agent':
      return cell.dimensions.agent ?? NONE_LABEL;
    case 'microdao':
      return cell.dimensions.microdao ?? NONE_LABEL;
    case 'model':
      return cell.dimensions.model ?? NONE_LABEL;
    case 'provider':
      return cell.dimensions.provider ?? NONE_LABEL;
    case 'key':
      return cell.dimensions.key ?? NONE_LABEL;
    case 'day':
      return dayLabel(hour);
    case 'hour':
      return hourLabel(hour);
  }
}

/** Answer a parsed query from the rollups. Groups are sorted by their key values, in group_by order. */
export function runUsageQuery(rollups: UsageRollups, query: ParsedUsageQuery): AggregatedReply {
  const total = new Accumulator();
  const groups = new Map<string, { values: string[]; accumulator: Accumulator }>();
  for (const [hour, cells] of rollups.hours) {
    if (query.sinceHour !== undefined && hour < query.sinceHour) continue;
    if (query.untilHour !== undefined && hour >= query.untilHour) continue;
    for (const cell of cells.values()) {
      if (!matches(cell, query)) continue;
      total.add(cell);
      if (query.groupBy.length === 0) continue;
      const values = query.groupBy.map((key) => groupValue(key, hour, cell));
      const groupKey = JSON.stringify(values);
      let group = groups.get(groupKey);
      if (group === undefined) {
        group = { values, accumulator: new Accumulator() };
        groups.set(groupKey, group);
      }
      group.accumulator.add(cell);
    }
  }
  const sorted = [...groups.values()].sort((left, right) => compareValues(left.values, right.values));
  return {
    ...total.totals(),
    ...replyRange(query),
    groups: sorted.map(({ values, accumulator }) => ({
      key: Object.fromEntries(query.groupBy.map((key, index) => [key, values[index] as string])),
      ...accumulator.totals(),
    })),
  };
}

/** The range a reply covers, as the query's whole hours (null: open). */
export function replyRange(query: Pick<ParsedUsageQuery, 'sinceHour' | 'untilHour'>): {
  since: string | null;
  until: string | null;
} {
  return {
    since: query.sinceHour === undefined ? null : new Date(query.sinceHour * HOUR_MS).toISOString(),
    until: query.untilHour === undefined ? null : new Date(query.untilHour * HOUR_MS).toISOString(),
  };
}

/** The order of groups: by their key values, in group_by order (plain string comparison). */
export function compareValues(left: string[], right: string[]): number {
  for (let index = 0; index < left.length; index += 1) {
    const a = left[index] ?? '';
    const b = right[index] ?? '';
    if (a !== b) return a < b ? -1 : 1;
  }
  return 0;
}
