import type { FinishReason } from '../../contract/reply.js';

/**
 * OpenAI's finish reasons and those of compatible servers, to ours. An unknown
 * reason means the provider stopped normally for a reason we do not know.
 */
const OPENAI_FINISH_REASONS: Record<string, FinishReason> = {
  stop: 'stop',
  length: 'length',
  tool_calls: 'tool_calls',
  function_call: 'tool_calls',
  content_filter: 'content_filter',
  // DeepSeek: the request was cut short because the service ran out of capacity.
  insufficient_system_resource: 'error',
  // vLLM / llama.cpp wordings.
  eos: 'stop',
  abort: 'error',
  error: 'error',
};

export function mapOpenAIFinishReason(reason: string | null | undefined, hasToolCalls: boolean): FinishReason {
  const mapped = reason === null || reason === undefined ? 'stop' : (OPENAI_FINISH_REASONS[reason] ?? 'stop');
  // Some compatible servers (vLLM, llama.cpp) say `stop` after a tool call; clients look for `tool_calls`.
  return mapped === 'stop' && hasToolCalls ? 'tool_calls' : mapped;
}
