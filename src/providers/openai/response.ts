import type { ToolCall } from '../../contract/request.js';
import type { ToolCallDelta } from '../../contract/reply.js';
import { mapOpenAIFinishReason } from './finish-reason.js';
import type { OpenAIChunk, OpenAICompletion } from './schema.js';
import type { ProviderResponse, ProviderStreamEvent, ProviderUsage } from '../types.js';

export function convertOpenAICompletion(completion: OpenAICompletion, requestedModel: string): ProviderResponse {
  // The schema guarantees at least one choice; we ask for n = 1.
  const choice = completion.choices[0]!;
  const toolCalls: ToolCall[] | undefined = choice.message.tool_calls?.map((call) => ({
    id: call.id,
    type: 'function',
    function: { name: call.function.name, arguments: call.function.arguments ?? '' },
  }));
  const hasToolCalls = toolCalls !== undefined && toolCalls.length > 0;
  const response: ProviderResponse = {
    content: choice.message.content ?? null,
    finishReason: mapOpenAIFinishReason(choice.finish_reason, hasToolCalls),
    modelResolved: completion.model ?? requestedModel,
  };
  if (hasToolCalls) response.toolCalls = toolCalls;
  if (choice.message.reasoning_content !== undefined && choice.message.reasoning_content !== null) {
    response.reasoningContent = choice.message.reasoning_content;
  }
  // A refusal is an answer: without it the caller sees `content: null` and cannot tell it from an empty one.
  if (typeof choice.message.refusal === 'string' && choice.message.refusal !== '')
    response.refusal = choice.message.refusal;
  const usage = convertOpenAIUsage(completion);
  if (usage !== undefined) response.usage = usage;
  return response;
}

/**
 * `usage` when the server sent it; else llama.cpp's `timings`, real counts too (the prompt is what it
 * evaluated plus what it took from its cache, as `usage.prompt_tokens` counts it); else none.
 */
export function convertOpenAIUsage(payload: Pick<OpenAICompletion, 'usage' | 'timings'>): ProviderUsage | undefined {
  const usage = payload.usage;
  if (usage !== undefined && usage !== null) {
    const converted: ProviderUsage = { promptTokens: usage.prompt_tokens, completionTokens: usage.completion_tokens };
    const cached = usage.prompt_tokens_details?.cached_tokens ?? usage.prompt_cache_hit_tokens;
    if (typeof cached === 'number' && cached > 0) converted.cachedPromptTokens = cached;
    return converted;
  }
  const timings = payload.timings;
  if (typeof timings?.prompt_n !== 'number' || typeof timings.predicted_n !== 'number') return undefined;
  return { promptTokens: timings.prompt_n + (timings.cache_n ?? 0), completionTokens: timings.predicted_n };
}

/** What the stream converter remembers between chunks. */
export interface OpenAIStreamState {
  modelSent: boolean;
  sawToolCalls: boolean;
  finished: boolean;
}

export function createOpenAIStreamState(): OpenAIStreamState {
  return { modelSent: false, sawToolCalls: false, finished: false };
}

function convertToolCallDeltas(
  deltas: NonNullable<NonNullable<NonNullable<OpenAIChunk['choices']>[number]['delta']>['tool_calls']>,
): ToolCallDelta[] {
  return deltas.map((delta) => {
    const converted: ToolCallDelta = { index: delta.index };
    if (delta.id !== undefined && delta.id !== null) converted.id = delta.id;
    if (delta.type !== undefined && delta.type !== null) converted.type = delta.type;
    if (delta.function !== undefined && delta.function !== null) {
      const fn: { name?: string; arguments?: string } = {};
      if (delta.function.name !== undefined && delta.function.name !== null) fn.name = delta.function.name;
      if (delta.function.arguments !== undefined && delta.function.arguments !== null)
        fn.arguments = delta.function.arguments;
      converted.function = fn;
    }
    return converted;
  });
}

/** One `chat.completion.chunk` to our events: model (once), delta, finish, usage, in that order. */
export function convertOpenAIChunk(chunk: OpenAIChunk, state: OpenAIStreamState): ProviderStreamEvent[] {
  const events: ProviderStreamEvent[] = [];
  if (!state.modelSent && chunk.model !== undefined && chunk.model !== null && chunk.model !== '') {
    state.modelSent = true;
    events.push({ type: 'model', modelResolved: chunk.model });
  }
  const choice = chunk.choices?.[0];
  const delta = choice?.delta;
  if (delta !== undefined && delta !== null) {
    const event: Extract<ProviderStreamEvent, { type: 'delta' }> = { type: 'delta' };
    if (delta.content !== undefined && delta.content !== null && delta.content !== '') event.content = delta.content;
    if (delta.reasoning_content !== undefined && delta.reasoning_content !== null && delta.reasoning_content !== '') {
      event.reasoningContent = delta.reasoning_content;
    }
    if (typeof delta.refusal === 'string' && delta.refusal !== '') event.refusal = delta.refusal;
    if (delta.tool_calls !== undefined && delta.tool_calls !== null && delta.tool_calls.length > 0) {
      event.toolCalls = convertToolCallDeltas(delta.tool_calls);
      state.sawToolCalls = true;
    }
    if (
      event.content !== undefined ||
      event.reasoningContent !== undefined ||
      event.refusal !== undefined ||
      event.toolCalls !== undefined
    )
      events.push(event);
  }
  if (choice?.finish_reason !== undefined && choice.finish_reason !== null && !state.finished) {
    state.finished = true;
    events.push({ type: 'finish', finishReason: mapOpenAIFinishReason(choice.finish_reason, state.sawToolCalls) });
  }
  // A later chunk's usage replaces an earlier one's: llama.cpp's `usage` chunk (include_usage) comes after its timings.
  const usage = convertOpenAIUsage(chunk);
  if (usage !== undefined) events.push({ type: 'usage', usage });
  return events;
}
