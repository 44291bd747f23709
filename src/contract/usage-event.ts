import { z } from 'zod';

/** The usage event published on `llm.usage.<agent-token>` (DESIGN.md, "Usage event"), version 1. */
export const USAGE_STATUSES = ['ok', 'error', 'rejected', 'cancelled'] as const;
export type UsageStatus = (typeof USAGE_STATUSES)[number];

export const usageEventSchema = z
  .object({
    v: z.literal(1),
    request_id: z.string().min(1),
    ts: z.string(),
    agent_id: z.string().nullable(),
    microdao_id: z.string().nullable(),
    channel_id: z.string().nullable(),
    model: z.string().nullable(),
    provider: z.string().nullable(),
    model_resolved: z.string().nullable(),
    status: z.enum(USAGE_STATUSES),
    error_code: z.string().nullable(),
    prompt_tokens: z.number().int().nonnegative(),
    completion_tokens: z.number().int().nonnegative(),
    total_tokens: z.number().int().nonnegative(),
    tokens_estimated: z.boolean(),
    /** Of the prompt tokens, those the provider served from its prompt cache (absent from older events). */
    cached_prompt_tokens: z.number().int().nonnegative().optional(),
    cost_usd: z.number().nonnegative(),
    /** A cache hit (`cached: true`, cost 0): what the answer cost when it was asked upstream, at today's prices. */
    saved_usd: z.number().nonnegative().optional(),
    latency_ms: z.number().nonnegative(),
    ttft_ms: z.number().nonnegative().nullable(),
    stream: z.boolean(),
    cached: z.boolean(),
    attempts: z.number().int().nonnegative(),
    worker_id: z.string(),
    /** The node of the worker that handled the request (`worker.node`, default its host name); absent from older events. */
    node: z.string().optional(),
    /**
     * The worker's own id for the request it handled (a UUID): the event's `Nats-Msg-Id` and what
     * aggregators deduplicate by. `request_id` is the client's correlation id and may repeat.
     * Absent from events written before it existed: those are keyed by `request_id`.
     */
    event_id: z.string().min(1).optional(),
    claimed_agent_id: z.string().optional(),
    /** The id of the per-agent key the request came with (`llm-proxy keys`); never the key itself. */
    key_id: z.string().optional(),
    attempt_details: z
      .array(
        z.object({
          /** The logical model the attempt served (absent from events written before it existed). */
          model: z.string().optional(),
          provider: z.string(),
          model_resolved: z.string(),
          error_code: z.string().nullable(),
          latency_ms: z.number(),
          prompt_tokens: z.number().optional(),
          completion_tokens: z.number().optional(),
        }),
      )
      .optional(),
    tags: z.record(z.string(), z.string()).optional(),
  })
  .passthrough();

export type UsageEvent = z.infer<typeof usageEventSchema>;

/** What identifies an event for deduplication: its `event_id`, or `request_id` for older events. */
export const usageEventKey = (event: Pick<UsageEvent, 'event_id' | 'request_id'>): string =>
  event.event_id ?? event.request_id;
