import { z } from 'zod';

/** Ollama's `/api/chat` reply and stream line, limited to the fields we use. */
const ollamaToolCallSchema = z.object({
  function: z.object({
    name: z.string(),
    // An object on the wire; a string tolerated from look-alike servers.
    arguments: z.union([z.record(z.string(), z.unknown()), z.string()]).nullish(),
  }),
});

export type OllamaResponseToolCall = z.infer<typeof ollamaToolCallSchema>;

export const ollamaChatSchema = z.object({
  model: z.string().nullish(),
  message: z
    .object({
      content: z.string().nullish(),
      thinking: z.string().nullish(),
      tool_calls: z.array(ollamaToolCallSchema).nullish(),
    })
    .nullish(),
  done: z.boolean().nullish(),
  done_reason: z.string().nullish(),
  prompt_eval_count: z.number().nonnegative().nullish(),
  eval_count: z.number().nonnegative().nullish(),
});

export type OllamaChat = z.infer<typeof ollamaChatSchema>;
