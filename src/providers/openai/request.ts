import type { ChatRequest } from '../../contract/request.js';

/**
 * OpenAI's chat-completions parameters that we pass on as the agent sent them.
 * Our own fields (metadata, request_id, timeout_ms, cache, provider_options,
 * stream_options) are never sent.
 */
const OPENAI_PARAMETERS = [
  'max_tokens',
  'max_completion_tokens',
  'temperature',
  'top_p',
  'stop',
  'seed',
  'n',
  'presence_penalty',
  'frequency_penalty',
  'logit_bias',
  'logprobs',
  'top_logprobs',
  'user',
  'tools',
  'tool_choice',
  'parallel_tool_calls',
  'response_format',
  'reasoning_effort',
] as const satisfies ReadonlyArray<keyof ChatRequest>;

/** The body of `POST {base_url}/chat/completions`; `provider_options` last, so that it can override anything. */
export function convertToOpenAIRequest(model: string, request: ChatRequest, stream: boolean): Record<string, unknown> {
  const body: Record<string, unknown> = { model, messages: request.messages };
  for (const parameter of OPENAI_PARAMETERS) {
    const value = request[parameter];
    if (value !== undefined) body[parameter] = value;
  }
  if (stream) {
    body.stream = true;
    // Without it OpenAI sends no usage on streams, and we would have to estimate.
    body.stream_options = { include_usage: true };
  }
  return { ...body, ...(request.provider_options ?? {}) };
}
