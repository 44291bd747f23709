/**
 * Gemini's `GenerateContentResponse` to ours. A streamed event is the same object with the parts
 * produced since the previous one, so one state machine serves both: a whole answer is a stream of
 * one event, folded.
 */
import type { ToolCall } from '../../contract/request.js';
import type { FinishReason, ToolCallDelta } from '../../contract/reply.js';
import { malformedResponse } from '../transport/provider-error.js';
import type { GeminiResponse, GeminiSafetyRating, GeminiUsageMetadata } from './schema.js';
import type { ProviderResponse, ProviderStreamEvent, ProviderUsage } from '../types.js';

/**
 * Gemini's finish reasons (js-genai `FinishReason`). Output withheld by a filter is
 * `content_filter` (with the reason as `refusal`); a tool call the model got wrong, or a language
 * it does not serve, is `error`: the answer is not complete. `OTHER` and reasons we do not know are
 * `stop`, as for the other providers.
 */
const GEMINI_FINISH_REASONS: Record<string, FinishReason> = {
  STOP: 'stop',
  MAX_TOKENS: 'length',
  SAFETY: 'content_filter',
  RECITATION: 'content_filter',
  BLOCKLIST: 'content_filter',
  PROHIBITED_CONTENT: 'content_filter',
  SPII: 'content_filter',
  IMAGE_SAFETY: 'content_filter',
  IMAGE_PROHIBITED_CONTENT: 'content_filter',
  IMAGE_RECITATION: 'content_filter',
  MALFORMED_FUNCTION_CALL: 'error',
  UNEXPECTED_TOOL_CALL: 'error',
  TOO_MANY_TOOL_CALLS: 'error',
  LANGUAGE: 'error',
};

export function mapGeminiFinishReason(reason: string, hasToolCalls: boolean): FinishReason {
  const mapped = GEMINI_FINISH_REASONS[reason] ?? 'stop';
  // Gemini says STOP after function calls; clients look for `tool_calls`.
  return mapped === 'stop' && hasToolCalls ? 'tool_calls' : mapped;
}

/** `blocked by Gemini: SAFETY (HARM_CATEGORY_…)`: the categories that blocked, else those rated MEDIUM or HIGH. */
export function describeBlock(
  reason: string,
  ratings: ReadonlyArray<GeminiSafetyRating> | null | undefined,
  message?: string | null,
): string {
  const blocked = (ratings ?? []).filter((rating) => rating.blocked === true);
  const flagged =
    blocked.length > 0 ? blocked : (ratings ?? []).filter((r) => /^(HIGH|MEDIUM)$/.test(r.probability ?? ''));
  const categories = flagged.map((rating) => rating.category).filter((category) => typeof category === 'string');
  const text = `blocked by Gemini: ${reason}${categories.length > 0 ? ` (${categories.join(', ')})` : ''}`;
  return message === undefined || message === null || message === '' ? text : `${text}: ${message}`;
}

/**
 * `promptTokenCount` (cached tokens included) plus `toolUsePromptTokenCount` (results of
 * Google-run tools, read as input); the answer is `candidatesTokenCount` plus `thoughtsTokenCount`,
 * both billed as output. A count left out is zero (proto3 JSON omits zeros), but with no prompt
 * count at all the prompt side is marked missing.
 */
export function convertGeminiUsage(usage: GeminiUsageMetadata | null | undefined): ProviderUsage | undefined {
  if (usage === undefined || usage === null) return undefined;
  const completion = (usage.candidatesTokenCount ?? 0) + (usage.thoughtsTokenCount ?? 0);
  if (typeof usage.promptTokenCount !== 'number') {
    return completion > 0 ? { promptTokens: 0, completionTokens: completion, missing: 'prompt' } : undefined;
  }
  const converted: ProviderUsage = {
    promptTokens: usage.promptTokenCount + (usage.toolUsePromptTokenCount ?? 0),
    completionTokens: completion,
  };
  if (typeof usage.cachedContentTokenCount === 'number' && usage.cachedContentTokenCount > 0)
    converted.cachedPromptTokens = usage.cachedContentTokenCount;
  return converted;
}

/** What the converter remembers between events. */
export interface GeminiStreamState {
  modelSent: boolean;
  /** Function calls so far: the next one's index, and its `call_<n>` id when Gemini gave none. */
  toolCallCount: number;
  finished: boolean;
  /** The last usageMetadata seen (each event repeats the totals so far); sent once, at the end. */
  usage: ProviderUsage | undefined;
}

export function createGeminiStreamState(): GeminiStreamState {
  return { modelSent: false, toolCallCount: 0, finished: false, usage: undefined };
}

type DeltaEvent = Extract<ProviderStreamEvent, { type: 'delta' }>;

/** One event to ours: model (once), delta (text, thoughts, whole function calls, a block), finish (once). */
export function convertGeminiChunk(chunk: GeminiResponse, state: GeminiStreamState): ProviderStreamEvent[] {
  const events: ProviderStreamEvent[] = [];
  if (!state.modelSent && typeof chunk.modelVersion === 'string' && chunk.modelVersion !== '') {
    state.modelSent = true;
    events.push({ type: 'model', modelResolved: chunk.modelVersion });
  }
  const usage = convertGeminiUsage(chunk.usageMetadata);
  if (usage !== undefined) state.usage = usage;
  const delta: DeltaEvent = { type: 'delta' };
  let finishReason: FinishReason | undefined;
  const candidate = chunk.candidates?.[0];
  const blockReason = chunk.promptFeedback?.blockReason;
  if (candidate === undefined && typeof blockReason === 'string' && blockReason !== '' && !state.finished) {
    // The prompt itself was blocked: no candidate at all.
    delta.refusal = describeBlock(
      blockReason,
      chunk.promptFeedback?.safetyRatings,
      chunk.promptFeedback?.blockReasonMessage,
    );
    finishReason = 'content_filter';
  }
  if (candidate !== undefined) {
    let content = '';
    let thoughts = '';
    const toolCalls: ToolCallDelta[] = [];
    for (const part of candidate.content?.parts ?? []) {
      if (part.functionCall !== undefined && part.functionCall !== null) {
        const index = state.toolCallCount++;
        const id = part.functionCall.id ?? `call_${index}`;
        const args = JSON.stringify(part.functionCall.args ?? {});
        toolCalls.push({ index, id, type: 'function', function: { name: part.functionCall.name, arguments: args } });
      } else if (typeof part.text === 'string') {
        if (part.thought === true) thoughts += part.text;
        else content += part.text;
      }
    }
    if (content !== '') delta.content = content;
    if (thoughts !== '') delta.reasoningContent = thoughts;
    if (toolCalls.length > 0) delta.toolCalls = toolCalls;
    if (typeof candidate.finishReason === 'string' && candidate.finishReason !== '' && !state.finished) {
      finishReason = mapGeminiFinishReason(candidate.finishReason, state.toolCallCount > 0);
      if (finishReason === 'content_filter')
        delta.refusal = describeBlock(candidate.finishReason, candidate.safetyRatings, candidate.finishMessage);
    }
  }
  if (
    delta.content !== undefined ||
    delta.reasoningContent !== undefined ||
    delta.refusal !== undefined ||
    delta.toolCalls !== undefined
  )
    events.push(delta);
  if (finishReason !== undefined) {
    state.finished = true;
    events.push({ type: 'finish', finishReason });
  }
  return events;
}

/** The end of the stream: the last usage reported, if any. */
export function endGeminiStream(state: GeminiStreamState): ProviderStreamEvent[] {
  return state.usage === undefined ? [] : [{ type: 'usage', usage: state.usage }];
}

/** A whole answer (generateContent): the events of one chunk, folded into one response. */
export function convertGeminiResponse(
  response: GeminiResponse,
  requestedModel: string,
  provider: string,
): ProviderResponse {
  const state = createGeminiStreamState();
  const events = [...convertGeminiChunk(response, state), ...endGeminiStream(state)];
  let content = '';
  let reasoning = '';
  let refusal = '';
  const toolCalls: ToolCall[] = [];
  let finishReason: FinishReason | undefined;
  let modelResolved = requestedModel;
  for (const event of events) {
    if (event.type === 'delta') {
      content += event.content ?? '';
      reasoning += event.reasoningContent ?? '';
      refusal += event.refusal ?? '';
      for (const call of event.toolCalls ?? []) {
        toolCalls.push({
          id: call.id!,
          type: 'function',
          function: { name: call.function!.name!, arguments: call.function!.arguments! },
        });
      }
    } else if (event.type === 'finish') finishReason = event.finishReason;
    else if (event.type === 'model') modelResolved = event.modelResolved;
  }
  if (finishReason === undefined) {
    if ((response.candidates?.length ?? 0) === 0) throw malformedResponse(provider, 'no candidates in response', 200);
    finishReason = mapGeminiFinishReason('STOP', toolCalls.length > 0);
  }
  const converted: ProviderResponse = {
    content: content === '' && (toolCalls.length > 0 || refusal !== '') ? null : content,
    finishReason,
    modelResolved,
  };
  if (toolCalls.length > 0) converted.toolCalls = toolCalls;
  if (reasoning !== '') converted.reasoningContent = reasoning;
  if (refusal !== '') converted.refusal = refusal;
  if (state.usage !== undefined) converted.usage = state.usage;
  return converted;
}
