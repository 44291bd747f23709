import { z } from 'zod';

/**
 * `llm.proxy.usage` request and reply (DESIGN.md, "Usage query"). Group key `key` is the id of the
 * per-agent key a request came with (the usage event's `key_id`).
 */
export const USAGE_GROUP_KEYS = ['agent', 'microdao', 'model', 'provider', 'key', 'day', 'hour'] as const;
export type UsageGroupKey = (typeof USAGE_GROUP_KEYS)[number];

/** Orders of the groups of a reply: by key (ascending), or top-N by a measure (descending). */
export const USAGE_ORDERS = ['key', 'cost', 'tokens', 'requests'] as const;
export type UsageOrder = (typeof USAGE_ORDERS)[number];
/** Most groups in one page. */
export const USAGE_MAX_LIMIT = 10_000;

export const usageQuerySchema = z
  .object({
    agent_id: z.string().min(1).optional(),
    microdao_id: z.string().min(1).optional(),
    model: z.string().min(1).optional(),
    provider: z.string().min(1).optional(),
    /** The id of a per-agent key (12 base62 characters; never the key itself). */
    key_id: z.string().min(1).optional(),
    /** ISO-8601 timestamp or a relative span such as `7d`, `24h`, `30m`. */
    since: z.string().min(1).optional(),
    until: z.string().min(1).optional(),
    group_by: z.union([z.enum(USAGE_GROUP_KEYS), z.array(z.enum(USAGE_GROUP_KEYS))]).optional(),
    /** Groups per reply (a page); the reply's `next_cursor` asks for the next one. */
    limit: z.number().int().min(1).max(USAGE_MAX_LIMIT).optional(),
    /** `next_cursor` of the previous page of the same query. */
    cursor: z.string().min(1).max(2_048).optional(),
    /** Order of the groups: by their key values (default), or the largest first by cost, tokens or requests. */
    order_by: z.enum(USAGE_ORDERS).optional(),
  })
  .strict();

export type UsageQuery = z.infer<typeof usageQuerySchema>;

export interface UsageTotals {
  total_requests: number;
  total_tokens: number;
  avg_latency_ms: number;
  success_rate: number;
  prompt_tokens: number;
  completion_tokens: number;
  cost_usd: number;
  errors: number;
  rejected: number;
  cached: number;
}

export interface UsageGroup extends UsageTotals {
  key: Partial<Record<UsageGroupKey, string>>;
}

export interface UsageQueryReply extends UsageTotals {
  groups: UsageGroup[];
}
