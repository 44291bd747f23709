import { z } from 'zod';

/**
 * Anthropic's Messages API answer and stream events, limited to the fields we use. Objects are
 * not strict: Anthropic adds fields (and block, delta and event types) without a new API version.
 */
const tokenCount = z.number().int().nonnegative();

/** `usage` of a message (and of `message_start`); the cache counts are null when caching was not used. */
const anthropicUsageSchema = z.object({
  input_tokens: tokenCount.nullish(),
  output_tokens: tokenCount.nullish(),
  cache_creation_input_tokens: tokenCount.nullish(),
  cache_read_input_tokens: tokenCount.nullish(),
});

export type AnthropicUsage = z.infer<typeof anthropicUsageSchema>;

/**
 * One content block: `text`, `thinking`, `redacted_thinking`, `tool_use`, server tool blocks…
 * `tool_use` needs `id` and `name` (checked where it is read: a JSON Schema union would let
 * a `tool_use` without them pass as an unknown block).
 */
const contentBlockSchema = z.object({
  type: z.string(),
  text: z.string().nullish(),
  thinking: z.string().nullish(),
  id: z.string().nullish(),
  name: z.string().nullish(),
  input: z.unknown().optional(),
});

export type AnthropicContentBlock = z.infer<typeof contentBlockSchema>;

export const anthropicMessageSchema = z.object({
  model: z.string().nullish(),
  content: z.array(contentBlockSchema),
  stop_reason: z.string().nullish(),
  usage: anthropicUsageSchema.nullish(),
});

export type AnthropicMessage = z.infer<typeof anthropicMessageSchema>;

export const messageStartSchema = z.object({
  type: z.literal('message_start'),
  message: z.object({ model: z.string().nullish(), usage: anthropicUsageSchema.nullish() }),
});

export const contentBlockStartSchema = z.object({
  type: z.literal('content_block_start'),
  index: tokenCount,
  content_block: contentBlockSchema,
});

/** `text_delta`, `thinking_delta`, `input_json_delta`, `signature_delta`, `citations_delta`… */
export const contentBlockDeltaSchema = z.object({
  type: z.literal('content_block_delta'),
  index: tokenCount,
  delta: z.object({
    type: z.string(),
    text: z.string().nullish(),
    thinking: z.string().nullish(),
    partial_json: z.string().nullish(),
  }),
});

export const contentBlockStopSchema = z.object({ type: z.literal('content_block_stop'), index: tokenCount });

/** `usage` here is cumulative: `output_tokens` always, the input counts when Anthropic revises them. */
export const messageDeltaSchema = z.object({
  type: z.literal('message_delta'),
  delta: z.object({ stop_reason: z.string().nullish() }).nullish(),
  usage: anthropicUsageSchema.nullish(),
});

/** The body of an error answer and of an `error` stream event. */
export const anthropicErrorSchema = z.object({
  type: z.literal('error'),
  error: z.object({ type: z.string(), message: z.string().nullish() }),
});

export type AnthropicError = z.infer<typeof anthropicErrorSchema>;
