import { z } from 'zod';

/**
 * OpenAI's chat-completion response and stream chunk, limited to the fields we
 * use. Compatible servers send `null` where OpenAI omits a field, hence `nullish`.
 */
const openAIUsageSchema = z.object({
  prompt_tokens: z.number().nonnegative(),
  completion_tokens: z.number().nonnegative(),
  // Prompt tokens served from the provider's cache: OpenAI's, then DeepSeek's own field.
  prompt_tokens_details: z.object({ cached_tokens: z.number().nonnegative().nullish() }).nullish(),
  prompt_cache_hit_tokens: z.number().nonnegative().nullish(),
});

/**
 * llama.cpp server's own counters, sent beside (or, in streams without `include_usage`, instead of)
 * `usage`: `prompt_n` prompt tokens evaluated, `cache_n` prompt tokens reused from its cache,
 * `predicted_n` tokens generated.
 */
const llamaCppTimingsSchema = z.object({
  prompt_n: z.number().nonnegative().nullish(),
  cache_n: z.number().nonnegative().nullish(),
  predicted_n: z.number().nonnegative().nullish(),
});

const tokenLogprobSchema = z.object({
  token: z.string(),
  logprob: z.number(),
  bytes: z.array(z.number().int()).nullish(),
  top_logprobs: z
    .array(z.object({ token: z.string(), logprob: z.number(), bytes: z.array(z.number().int()).nullish() }))
    .nullish(),
});

/** A choice's `logprobs` (`content` for the answer's tokens, `refusal` for a refusal's). */
const openAILogprobsSchema = z.object({
  content: z.array(tokenLogprobSchema).nullish(),
  refusal: z.array(tokenLogprobSchema).nullish(),
});

export type OpenAILogprobs = z.infer<typeof openAILogprobsSchema>;

const openAIToolCallSchema = z.object({
  id: z.string(),
  function: z.object({ name: z.string(), arguments: z.string().nullish() }),
});

export const openAICompletionSchema = z.object({
  model: z.string().nullish(),
  choices: z
    .array(
      z.object({
        // Absent on some compatible servers: the position in the array then.
        index: z.number().int().nonnegative().max(127).nullish(),
        message: z.object({
          content: z.string().nullish(),
          // DeepSeek-R1's chain of thought.
          reasoning_content: z.string().nullish(),
          refusal: z.string().nullish(),
          tool_calls: z.array(openAIToolCallSchema).nullish(),
        }),
        logprobs: openAILogprobsSchema.nullish(),
        finish_reason: z.string().nullish(),
      }),
    )
    .min(1, 'no choices'),
  usage: openAIUsageSchema.nullish(),
  timings: llamaCppTimingsSchema.nullish(),
});

export type OpenAICompletion = z.infer<typeof openAICompletionSchema>;

const openAIToolCallDeltaSchema = z.object({
  index: z.number().int().nonnegative(),
  id: z.string().nullish(),
  type: z.literal('function').nullish(),
  function: z.object({ name: z.string().nullish(), arguments: z.string().nullish() }).nullish(),
});

export const openAIChunkSchema = z.object({
  model: z.string().nullish(),
  choices: z
    .array(
      z.object({
        index: z.number().int().nonnegative().max(127).nullish(),
        delta: z
          .object({
            content: z.string().nullish(),
            reasoning_content: z.string().nullish(),
            refusal: z.string().nullish(),
            tool_calls: z.array(openAIToolCallDeltaSchema).nullish(),
          })
          .nullish(),
        logprobs: openAILogprobsSchema.nullish(),
        finish_reason: z.string().nullish(),
      }),
    )
    .nullish(),
  usage: openAIUsageSchema.nullish(),
  timings: llamaCppTimingsSchema.nullish(),
});

export type OpenAIChunk = z.infer<typeof openAIChunkSchema>;
