import type { UsageEvent, UsageStatus } from '../../src/contract/usage-event.js';
import type { UsageGroupKey } from '../../src/contract/usage-query.js';
import { seededRandom } from './seeded-random.js';

/**
 * Usage events for the aggregator's tests, generated deterministically, and
 * an independent, naive computation of what a usage query must answer.
 */
export const HOUR = 3_600_000;
export const BASE = Date.UTC(2026, 10, 24, 0, 0, 0);
/** The aggregators' clock for relative spans: three days after BASE, mid-hour. */
export const NOW = BASE + 72 * HOUR + 17 * 60_000;

const AGENTS = ['agent:sofia', 'agent:helion', 'agent:a.b', null] as const;
const MICRODAOS = ['microdao:7', 'microdao:9', null] as const;
const MODELS = [
  { model: 'gpt-4.1-mini', provider: 'openai', prompt: 0.01, completion: 0.03 },
  { model: 'deepseek-chat', provider: 'deepseek', prompt: 0.00027, completion: 0.0011 },
  { model: 'llama3', provider: 'local', prompt: 0, completion: 0 },
  { model: 'gpt-4o-mini', provider: 'openai', prompt: 0.00015, completion: 0.0006 },
] as const;

/**
 * Aggregator settings for these events: their dates are fixed (November 2026) while the aggregator's
 * clock is the stream's (now), so hour resolution and retention are kept forever: the answers do not
 * depend on the day the tests run.
 */
export const FIXED_DATES = { hour_window: 'forever', retention: 'forever' } as const;

export function makeEvents(count: number): UsageEvent[] {
  const next = seededRandom(42);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
  const events: UsageEvent[] = [];
  for (let index = 0; index < count; index += 1) {
    const route = pick(MODELS);
    const roll = next();
    const status: UsageStatus = roll < 0.8 ? 'ok' : roll < 0.88 ? 'error' : roll < 0.95 ? 'rejected' : 'cancelled';
    const prompt = status === 'rejected' ? 0 : Math.floor(next() * 2_000);
    const completion = status === 'ok' ? Math.floor(next() * 800) : 0;
    const cached = status === 'ok' && next() < 0.1;
    const agent = pick(AGENTS);
    events.push({
      v: 1,
      request_id: `req-${index.toString().padStart(5, '0')}-${Math.floor(next() * 1e9).toString(36)}`,
      ts: new Date(BASE + Math.floor(next() * 72 * HOUR)).toISOString(),
      agent_id: agent,
      microdao_id: pick(MICRODAOS),
      channel_id: 'c-1',
      model: route.model,
      provider: status === 'rejected' ? null : route.provider,
      model_resolved: route.model,
      status,
      error_code:
        status === 'ok'
          ? null
          : status === 'rejected'
            ? 'rate_limited'
            : status === 'cancelled'
              ? 'cancelled'
              : 'upstream_error',
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
      tokens_estimated: next() < 0.05,
      // Every fifth event had part of its prompt served from the provider's cache (drawn without randomness,
      // so that the other fields stay as they were).
      ...(index % 5 === 0 ? { cached_prompt_tokens: Math.floor(prompt * 0.3) } : {}),
      cost_usd: cached ? 0 : (prompt / 1000) * route.prompt + (completion / 1000) * route.completion,
      ...(cached ? { saved_usd: (prompt / 1000) * route.prompt + (completion / 1000) * route.completion } : {}),
      latency_ms: Math.round(next() * 3_000_000) / 1000,
      ttft_ms: null,
      stream: false,
      cached,
      attempts: 1,
      worker_id: `worker-${index % 3}`,
    });
  }
  return events;
}

export interface HandQuery {
  agent_id?: string;
  microdao_id?: string;
  model?: string;
  provider?: string;
  sinceMs?: number;
  untilMs?: number;
  group_by?: UsageGroupKey[];
}

/** An independent, naive computation of a query's answer over the events themselves. */
export function handCompute(events: UsageEvent[], query: HandQuery) {
  const sinceHour = query.sinceMs === undefined ? undefined : Math.floor(query.sinceMs / HOUR);
  const untilHour = query.untilMs === undefined ? undefined : Math.ceil(query.untilMs / HOUR);
  const selected = events.filter((event) => {
    const hour = Math.floor(Date.parse(event.ts) / HOUR);
    return (
      (query.agent_id === undefined || event.agent_id === query.agent_id) &&
      (query.microdao_id === undefined || event.microdao_id === query.microdao_id) &&
      (query.model === undefined || event.model === query.model) &&
      (query.provider === undefined || event.provider === query.provider) &&
      (sinceHour === undefined || hour >= sinceHour) &&
      (untilHour === undefined || hour < untilHour)
    );
  });
  const totals = (list: UsageEvent[]) => {
    const count = (status: UsageStatus) => list.filter((event) => event.status === status).length;
    const sum = (pick: (event: UsageEvent) => number) => list.reduce((total, event) => total + pick(event), 0);
    const nano = list.reduce((total, event) => total + BigInt(Math.round(event.cost_usd * 1e9)), 0n);
    const micros = sum((event) => Math.round(event.latency_ms * 1000));
    return {
      total_requests: list.length,
      total_tokens: sum((event) => event.total_tokens),
      avg_latency_ms: list.length === 0 ? 0 : Math.round(micros / list.length) / 1000,
      success_rate: list.length === 0 ? 0 : count('ok') / list.length,
      prompt_tokens: sum((event) => event.prompt_tokens),
      completion_tokens: sum((event) => event.completion_tokens),
      cached_prompt_tokens: sum((event) => event.cached_prompt_tokens ?? 0),
      saved_usd:
        Number(list.reduce((total, event) => total + BigInt(Math.round((event.saved_usd ?? 0) * 1e9)), 0n)) / 1e9,
      cost_usd: Number(nano) / 1e9,
      ok: count('ok'),
      errors: count('error'),
      rejected: count('rejected'),
      cancelled: count('cancelled'),
      cached: list.filter((event) => event.cached).length,
      tokens_estimated: list.filter((event) => event.tokens_estimated).length,
    };
  };
  const label = (key: UsageGroupKey, event: UsageEvent): string => {
    const hourStart = new Date(Math.floor(Date.parse(event.ts) / HOUR) * HOUR).toISOString();
    switch (key) {
      case 'agent':
        return event.agent_id ?? '(none)';
      case 'microdao':
        return event.microdao_id ?? '(none)';
      case 'model':
        return event.model ?? '(none)';
      case 'key':
        return event.key_id ?? '(none)';
      case 'provider':
        return event.provider ?? '(none)';
      case 'day':
        return hourStart.slice(0, 10);
      case 'hour':
        return `${hourStart.slice(0, 13)}:00Z`;
    }
  };
  const groupBy = query.group_by ?? [];
  const groups = new Map<string, { values: string[]; events: UsageEvent[] }>();
  if (groupBy.length > 0) {
    for (const event of selected) {
      const values = groupBy.map((key) => label(key, event));
      const id = values.join('\u0000');
      const group = groups.get(id) ?? { values, events: [] };
      group.events.push(event);
      groups.set(id, group);
    }
  }
  const ordered = [...groups.values()].sort((left, right) => {
    for (let index = 0; index < groupBy.length; index += 1) {
      const a = left.values[index] as string;
      const b = right.values[index] as string;
      if (a !== b) return a < b ? -1 : 1;
    }
    return 0;
  });
  return {
    ...totals(selected),
    since: sinceHour === undefined ? null : new Date(sinceHour * HOUR).toISOString(),
    until: untilHour === undefined ? null : new Date(untilHour * HOUR).toISOString(),
    groups: ordered.map((group) => ({
      key: Object.fromEntries(groupBy.map((key, index) => [key, group.values[index]])),
      ...totals(group.events),
    })),
    /** Cost summed as plain dollars, to check the reply to the cent independently of the nano-dollar rule. */
    cents: Math.round(selected.reduce((total, event) => total + event.cost_usd, 0) * 100),
  };
}
