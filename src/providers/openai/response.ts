import type { ToolCall } from '../../contract/request.js';
import type { ChoiceLogprobs, TokenLogprob, ToolCallDelta } from '../../contract/reply.js';
import { mapOpenAIFinishReason } from './finish-reason.js';
import type { OpenAIChunk, OpenAICompletion, OpenAILogprobs } from './schema.js';
import type { ProviderChoice, ProviderResponse, ProviderStreamEvent, ProviderUsage } from '../types.js';

type OpenAIChoice = OpenAICompletion['choices'][number];

/** OpenAI's `logprobs` in our (OpenAI's own) shape; `undefined` when the choice has none. */
export function convertOpenAILogprobs(logprobs: OpenAILogprobs | null | undefined): ChoiceLogprobs | undefined {
  if (logprobs === undefined || logprobs === null) return undefined;
  const tokens = (list: OpenAILogprobs['content']): TokenLogprob[] | null =>
    list === undefined || list === null
      ? null
      : list.map((entry) => {
          const token: TokenLogprob = { token: entry.token, logprob: entry.logprob, bytes: entry.bytes ?? null };
          if (entry.top_logprobs !== undefined && entry.top_logprobs !== null)
            token.top_logprobs = entry.top_logprobs.map((top) => ({
              token: top.token,
              logprob: top.logprob,
              bytes: top.bytes ?? null,
            }));
          return token;
        });
  const converted: ChoiceLogprobs = { content: tokens(logprobs.content) };
  if (logprobs.refusal !== undefined && logprobs.refusal !== null) converted.refusal = tokens(logprobs.refusal);
  return converted;
}

function convertOpenAIChoice(choice: OpenAIChoice): ProviderChoice {
  const toolCalls: ToolCall[] | undefined = choice.message.tool_calls?.map((call) => ({
    id: call.id,
    type: 'function',
    function: { name: call.function.name, arguments: call.function.arguments ?? '' },
  }));
  const hasToolCalls = toolCalls !== undefined && toolCalls.length > 0;
  const converted: ProviderChoice = {
    content: choice.message.content ?? null,
    finishReason: mapOpenAIFinishReason(choice.finish_reason, hasToolCalls),
  };
  if (hasToolCalls) converted.toolCalls = toolCalls;
  if (choice.message.reasoning_content !== undefined && choice.message.reasoning_content !== null) {
    converted.reasoningContent = choice.message.reasoning_content;
  }
  // A refusal is an answer: without it the caller sees `content: null` and cannot tell it from an empty one.
  if (typeof choice.message.refusal === 'string' && choice.message.refusal !== '')
    converted.refusal = choice.message.refusal;
  const logprobs = convertOpenAILogprobs(choice.logprobs);
  if (logprobs !== undefined) converted.logprobs = logprobs;
  return converted;
}

/** A completion: the first choice's fields, and every choice (by `index`) when there are several (`n` > 1). */
export function convertOpenAICompletion(completion: OpenAICompletion, requestedModel: string): ProviderResponse {
  // One choice (n = 1, the usual answer) is converted as it is; several are put in order by `index`.
  const choices =
    completion.choices.length === 1
      ? [convertOpenAIChoice(completion.choices[0]!)]
      : completion.choices
          .map((choice, position) => ({ choice, index: choice.index ?? position }))
          .sort((left, right) => left.index - right.index)
          .map(({ choice }) => convertOpenAIChoice(choice));
  // The schema guarantees at least one choice.
  const response: ProviderResponse = { ...choices[0]!, modelResolved: completion.model ?? requestedModel };
  if (choices.length > 1) response.choices = choices;
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
  /** The choices (by index) that had tool-call deltas, and those that finished. */
  sawToolCalls: Set<number>;
  finishedChoices: Set<number>;
  /** A choice finished: the stream is a complete answer even without `[DONE]`. */
  finished: boolean;
}

export function createOpenAIStreamState(): OpenAIStreamState {
  return { modelSent: false, sawToolCalls: new Set(), finishedChoices: new Set(), finished: false };
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

type OpenAIChunkChoice = NonNullable<OpenAIChunk['choices']>[number];

/** One choice of a chunk: its delta, then its finish. Events of choices past the first carry their index. */
function convertChunkChoice(choice: OpenAIChunkChoice, state: OpenAIStreamState, events: ProviderStreamEvent[]): void {
  const index = choice.index ?? 0;
  const delta = choice.delta;
  const logprobs = convertOpenAILogprobs(choice.logprobs);
  const event: Extract<ProviderStreamEvent, { type: 'delta' }> = { type: 'delta' };
  if (index !== 0) event.index = index;
  if (delta !== undefined && delta !== null) {
    if (delta.content !== undefined && delta.content !== null && delta.content !== '') event.content = delta.content;
    if (delta.reasoning_content !== undefined && delta.reasoning_content !== null && delta.reasoning_content !== '') {
      event.reasoningContent = delta.reasoning_content;
    }
    if (typeof delta.refusal === 'string' && delta.refusal !== '') event.refusal = delta.refusal;
    if (delta.tool_calls !== undefined && delta.tool_calls !== null && delta.tool_calls.length > 0) {
      event.toolCalls = convertToolCallDeltas(delta.tool_calls);
      state.sawToolCalls.add(index);
    }
  }
  if (logprobs !== undefined && ((logprobs.content?.length ?? 0) > 0 || (logprobs.refusal?.length ?? 0) > 0))
    event.logprobs = logprobs;
  if (
    event.content !== undefined ||
    event.reasoningContent !== undefined ||
    event.refusal !== undefined ||
    event.toolCalls !== undefined ||
    event.logprobs !== undefined
  )
    events.push(event);
  if (choice.finish_reason !== undefined && choice.finish_reason !== null && !state.finishedChoices.has(index)) {
    state.finishedChoices.add(index);
    state.finished = true;
    const finish: ProviderStreamEvent = {
      type: 'finish',
      finishReason: mapOpenAIFinishReason(choice.finish_reason, state.sawToolCalls.has(index)),
    };
    if (index !== 0) finish.index = index;
    events.push(finish);
  }
}

/** One `chat.completion.chunk` to our events: model (once), delta, finish, usage, in that order. */
export function convertOpenAIChunk(chunk: OpenAIChunk, state: OpenAIStreamState): ProviderStreamEvent[] {
  const events: ProviderStreamEvent[] = [];
  if (!state.modelSent && chunk.model !== undefined && chunk.model !== null && chunk.model !== '') {
    state.modelSent = true;
    events.push({ type: 'model', modelResolved: chunk.model });
  }
  for (const choice of chunk.choices ?? []) convertChunkChoice(choice, state, events);
  // A later chunk's usage replaces an earlier one's: llama.cpp's `usage` chunk (include_usage) comes after its timings.
  const usage = convertOpenAIUsage(chunk);
  if (usage !== undefined) events.push({ type: 'usage', usage });
  return events;
}
